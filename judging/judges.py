"""The judges of the videos: DINO ViT-B/16 and the LAION aesthetic predictor, and the per-video scores
made with them (VBench's subject consistency and aesthetic quality) or without them (flickering, the
motion stand-in, the distance to V_0)."""
from dataclasses import dataclass

import torch
from torch import nn

from judging import metrics
from model import DINO, AestheticPredictor, CLIPConfig, ViTConfig
from weights import fetch, load_checked

# A video is static (left out of Table 1, as the paper leaves out static videos) when its frames differ
# by less than this many grey levels (of 255) on average: temporal flickering above 254/255.
STATIC_LEVELS = 1.0


@dataclass
class Judges:
    dino: DINO
    aesthetic: AestheticPredictor


def load_judges(dino_source, aesthetic_source, device):
    """DINO ViT-B/16 and the LAION aesthetic predictor (ViT-L/14) from hub repos or local folders."""
    with torch.device("meta"):
        dino, aesthetic = DINO(), AestheticPredictor()
    dino = load_checked(dino, fetch(dino_source, "model.safetensors"), ignored=("pooler.",))
    aesthetic = load_checked(aesthetic, fetch(aesthetic_source, "model.safetensors"))
    return Judges(dino.to(device), aesthetic.to(device))


def tiny_judges(seed=0, device="cpu"):
    """Small seeded RANDOM stand-ins for the two judges, for tests: their scores mean nothing."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dino = DINO(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
        nn.init.normal_(dino.embeddings.cls_token, std=0.02)
        nn.init.normal_(dino.embeddings.position_embeddings, std=0.02)
        aesthetic = AestheticPredictor(CLIPConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, patch_size=32, projection_dim=16,
                                                  hidden_act="quick_gelu"))
    return Judges(dino.eval().to(device), aesthetic.eval().to(device))


def video_metrics(judges, frames8):
    """The VBench scores of one video, and its DINO features (F, D) for the comparisons; without judges
    (None) only the scores that need none, and no features."""
    change = (frames8[1:].double() - frames8[:-1].double()).abs().mean().item()
    scores = {"motion_smoothness_standin": metrics.motion_smoothness_standin(frames8),
              "temporal_flickering": metrics.temporal_flickering(frames8),
              "mean_frame_change": change, "static": change < STATIC_LEVELS}
    if judges is None:
        return scores, None
    device = next(judges.dino.parameters()).device
    with torch.no_grad():
        features = judges.dino(metrics.dino_pixels(frames8).to(device)).cpu()
        aesthetic = judges.aesthetic(metrics.clip_pixels(frames8).to(device)).cpu()
    return scores | {"subject_consistency": metrics.subject_consistency(features),
                     "aesthetic_quality": metrics.aesthetic_quality(aesthetic)}, features


def comparison_metrics(frames8, clean8, features, clean_features):
    """How far a video moved from V_0, frame by frame: mean PSNR, mean SSIM, and with judges the mean DINO
    cosine similarity."""
    scores = metrics.video_distance(frames8, clean8)
    if features is not None:
        scores["dino_similarity"] = metrics.feature_similarity(features, clean_features)
    return scores
