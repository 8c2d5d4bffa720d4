"""The V2I research bench: the paper's tables on synthetic data, speed against peers, parameter counts, extraction
speed, and the scripts that read a finished bench (fresh_draw, share_estimators, gpu_kernel_share).

It trains and scores the pipeline's own models through v2i_core, from the stage sections of the pipeline's params
(v2i_bench.config); v2i_core never imports it. `v2i bench ...` reaches it through an entry point (v2i_bench.cli).
"""
