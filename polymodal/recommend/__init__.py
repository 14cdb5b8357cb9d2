"""Cross-modal recommendation (issue 17): interactions, side-table features through the frozen-encoder cache,
a two-tower model, ranking metrics. Work in progress: no front (Recommender, CLI, server) yet."""
