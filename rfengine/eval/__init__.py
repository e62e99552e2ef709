"""Evaluation: feature extractors (the digit classifier, the TF FID Inception), Fréchet distance, Inception Score
and precision/recall, streamed scoring of sample files, exposure-bias diagnostics."""
from rfengine.eval.fd import RunningStats, feature_stats, frechet_distance, inception_score, precision_recall
from rfengine.eval.features import DigitsFeatures, InceptionFeatures, build_extractor

__all__ = ["RunningStats", "feature_stats", "frechet_distance", "inception_score", "precision_recall",
           "DigitsFeatures", "InceptionFeatures", "build_extractor"]
