"""Datasets: layout (schema), publishing (writer), loading, lineage and the forget view, MMRec
import, synthetic data.

Ray Data readers (:func:`interactions_dataset`, :func:`features_dataset`) import Ray lazily.
"""

from mmrecun_ray.data.dataset import (UserItemCSR, features_dataset, features_to_numpy,
                                      interactions_dataset, load_dataset, read_manifest,
                                      train_user_items, user_items, verify_files)
from mmrecun_ray.data.forget import ForgetView, apply_forget_view, forget_view
from mmrecun_ray.data.lineage import (Lineage, child_lineage, ledger_uri_for, root_uri,
                                      version_hashes)
from mmrecun_ray.data.mmrec_import import prepare_mmrec, read_mmrec
from mmrecun_ray.data.schema import Interactions, Manifest, RecDataset
from mmrecun_ray.data.synthetic import (PRESETS, SyntheticSpec, generate_synthetic, prepare_synthetic,
                                        true_scores)
from mmrecun_ray.data.writer import write_dataset

__all__ = ["PRESETS", "ForgetView", "Interactions", "Lineage", "Manifest", "RecDataset",
           "SyntheticSpec", "UserItemCSR", "apply_forget_view", "child_lineage", "features_dataset",
           "features_to_numpy", "forget_view", "generate_synthetic", "interactions_dataset",
           "ledger_uri_for", "load_dataset", "prepare_mmrec", "prepare_synthetic", "read_manifest",
           "read_mmrec", "root_uri", "train_user_items", "true_scores", "user_items",
           "verify_files", "version_hashes", "write_dataset"]
