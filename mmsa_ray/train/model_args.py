"""The model flags that featurize and train share (the frozen parts of ModelConfig: encoders,
frames, text length and context), the ModelConfig they map onto, and the seeded model build."""

from __future__ import annotations

import argparse


def build_model(config, init_seed: int = 0):
    """MultimodalSentimentModel(config) with the global torch RNG seeded (random-init trunks are reproducible)."""
    import torch

    from mmsa_ray.model import MultimodalSentimentModel

    torch.manual_seed(init_seed)
    return MultimodalSentimentModel(config)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Flags for the frozen parts of ModelConfig (shared by featurize and train); defaults are the configs'."""
    from mmsa_ray.features import FeatureConfig
    from mmsa_ray.media.types import DecodeConfig
    from mmsa_ray.model import ModelConfig

    m, d, f = ModelConfig(), DecodeConfig(), FeatureConfig()
    p.add_argument("--text-encoder", default=m.text_encoder,
                   help="text encoder: 'minilm' (bundled, offline), a HF name or a local path "
                        f"(default {m.text_encoder})")
    p.add_argument("--video-weights", default=m.video_weights,
                   help="r3d_18 weights: 'none' (random, seeded), 'kinetics' (download) or a state-dict file "
                        f"(default {m.video_weights})")
    p.add_argument("--num-frames", type=int, default=d.num_frames,
                   help=f"frames sampled per clip (default {d.num_frames})")
    p.add_argument("--size", type=int, default=d.height, help=f"frame height and width in pixels (default {d.height})")
    p.add_argument("--max-text-length", type=int, default=f.max_text_length,
                   help=f"tokens per transcript, context included (default {f.max_text_length})")
    p.add_argument("--context-turns", type=int, default=f.context_turns,
                   help=f"earlier utterances of the dialogue encoded with each transcript (default {f.context_turns})")
    p.add_argument("--future-turns", type=int, default=f.future_turns,
                   help="later utterances of the dialogue encoded after the earlier ones; training keeps a random "
                        f"number of them per step, down to none (default {f.future_turns})")
    p.add_argument("--context-speakers", action="store_true",
                   help="mark each context utterance [same] or [other] by who said it (MELD's speakers in training, "
                        "diarized ones in label and serve)")
    p.add_argument("--text-pooling", default=m.text_pooling, choices=["mean", "current", "cls"],
                   help="text encoder pooling: mean of all tokens, of the transcript's own tokens ('current', "
                        f"context excluded), or [CLS] (default {m.text_pooling})")


def model_config_from_args(args, **overrides):
    from mmsa_ray.features import FeatureConfig
    from mmsa_ray.media.types import DecodeConfig
    from mmsa_ray.model import ModelConfig

    return ModelConfig(
        text_encoder=args.text_encoder, video_weights=args.video_weights,
        decode=DecodeConfig(num_frames=args.num_frames, height=args.size, width=args.size),
        features=FeatureConfig(max_text_length=args.max_text_length, context_turns=args.context_turns,
                               future_turns=args.future_turns, context_speakers=args.context_speakers),
        text_pooling=args.text_pooling, **overrides,
    )
