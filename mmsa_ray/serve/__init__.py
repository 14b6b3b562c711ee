"""The serve wing: the model over HTTP with Ray Serve, and its upload page at `/`.

`deployments` holds the deployments and the HTTP ingress; `launch` builds the app from a
config and its resource plan (`plan`) and is `mmsa-ray serve` (`app` is what `serve run
mmsa_ray.serve:app` and `jobs/serve.yaml` import); `config` the settings and flags,
`request` the upload form, `page` the HTML page.
"""

from mmsa_ray.serve.config import ServeConfig, add_serve_args, serve_config_from_args
from mmsa_ray.serve.launch import app, build_app, http_options

__all__ = ["ServeConfig", "add_serve_args", "app", "build_app", "http_options", "serve_config_from_args"]
