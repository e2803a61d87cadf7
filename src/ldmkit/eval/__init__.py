"""Sample-quality evaluation: feature extractors, distribution metrics, reports.

`ldm eval` = `read_sample_folder` + `resolve_features` + `evaluate` + `format_report`;
`ldm eval --vae` = `reconstruction_metrics`.
"""

from ldmkit.eval.classifier import (
    ClassifierConfig,
    ClassifierFeatures,
    ClassifierNet,
    load_classifier,
    save_classifier,
)
from ldmkit.eval.classifier_train import train_classifier
from ldmkit.eval.efficientnet_lite import EfficientNetLite0Features
from ldmkit.eval.extractor import FeatureExtractor
from ldmkit.eval.features import FEATURE_NAMES, resolve_features
from ldmkit.eval.inception import InceptionFeatures
from ldmkit.eval.metrics import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kid,
    precision_recall,
)
from ldmkit.eval.reconstruction import psnr, reconstruction_metrics, ssim
from ldmkit.eval.report import distribution_metrics, evaluate, format_report
from ldmkit.eval.samples_io import (
    SAMPLES_FILE,
    SampleSet,
    dataset_to_uint8,
    read_sample_classes,
    read_sample_folder,
    read_samples_info,
    sample_filename,
    write_samples_info,
)

__all__ = [
    "ClassifierConfig",
    "ClassifierFeatures",
    "ClassifierNet",
    "EfficientNetLite0Features",
    "FEATURE_NAMES",
    "FeatureExtractor",
    "InceptionFeatures",
    "SAMPLES_FILE",
    "SampleSet",
    "dataset_to_uint8",
    "distribution_metrics",
    "evaluate",
    "format_report",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "kid",
    "load_classifier",
    "precision_recall",
    "psnr",
    "read_sample_classes",
    "read_sample_folder",
    "read_samples_info",
    "reconstruction_metrics",
    "resolve_features",
    "sample_filename",
    "save_classifier",
    "ssim",
    "train_classifier",
    "write_samples_info",
]
