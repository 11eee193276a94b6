"""Datasets: layout (schema), publishing (writer), loading, MMRec import, synthetic data.

Ray Data readers (:func:`interactions_dataset`, :func:`features_dataset`) import Ray lazily.
"""

from mmrecun_ray.data.dataset import (UserItemCSR, apply_forget_filter, features_dataset,
                                      features_to_numpy, interactions_dataset, load_dataset,
                                      read_manifest, train_user_items, user_items, verify_files)
from mmrecun_ray.data.mmrec_import import prepare_mmrec, read_mmrec
from mmrecun_ray.data.schema import Interactions, Manifest, RecDataset
from mmrecun_ray.data.synthetic import (PRESETS, SyntheticSpec, generate_synthetic, prepare_synthetic,
                                        true_scores)
from mmrecun_ray.data.writer import write_dataset

__all__ = ["PRESETS", "Interactions", "Manifest", "RecDataset", "SyntheticSpec", "UserItemCSR",
           "apply_forget_filter", "features_dataset", "features_to_numpy", "generate_synthetic",
           "interactions_dataset", "load_dataset", "prepare_mmrec", "prepare_synthetic", "read_manifest",
           "read_mmrec", "train_user_items", "true_scores", "user_items", "verify_files",
           "write_dataset"]
