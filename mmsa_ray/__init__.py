"""mmsa_ray: multimodal emotion and sentiment analysis of video on Ray."""

__version__ = "0.1.0"
