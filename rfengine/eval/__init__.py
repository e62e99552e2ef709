"""Evaluation: feature extractors, Fréchet distance and precision/recall, exposure-bias diagnostics."""
from rfengine.eval.fd import FDResult, feature_stats, frechet_distance, precision_recall
from rfengine.eval.features import DigitsFeatures, InceptionFeatures, build_extractor

__all__ = ["FDResult", "feature_stats", "frechet_distance", "precision_recall", "DigitsFeatures",
           "InceptionFeatures", "build_extractor"]
