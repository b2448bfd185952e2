"""selfreward: self-rewarding language models (Yuan et al. 2024) with DPO, on a CPU or on GPUs."""
