"""Cross-modal recommendation (issue 17): interactions and splits (data), side-table columns through the
frozen-encoder cache (features), the two-tower model (model, train), ranking metrics, baselines, and the
front: `Recommender` (recommender; run folder in run_folder), `polymodal recommend` (cli)."""
