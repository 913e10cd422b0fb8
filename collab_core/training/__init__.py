"""Offline work: router traces, router training, budget calibration, the CommonsenseQA task format.

The runtime (engine, routers, scorers, the cloud leg) never imports this package; a test keeps it so.

* ``traces`` -- the local model's signals at every position, labelled by the cloud (``collab router collect``);
* ``train`` -- the learned router's cross-validated training and its router folder (``collab router train``);
* ``calibrate`` -- a budget router calibrated on the local model's answers to sample prompts;
* ``csqa`` -- the CommonsenseQA prompt format and answer check (benchmarks and traces share it).
"""

from .calibrate import calibrate_on

__all__ = ["calibrate_on"]
