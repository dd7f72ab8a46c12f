"""Reinforcement learning pieces as pure tensor / string functions (no Lightning import).

Shape legend used throughout ``skinflow.rl``:

    B  images (prompts) in a batch
    G  completions sampled per image (the group)
    T  completion tokens (padded to the longest completion of the rollout)
    V  vocabulary size
    N  B * G, the flattened sequence axis

Rewards are (B, G); per-token tensors (log-probabilities, masks, losses) are (B, G, T).
"""
