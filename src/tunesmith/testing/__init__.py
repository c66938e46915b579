"""Test and benchmark support: reference implementations and fixtures.
Never imported by the product (an import-linter contract checks it).

    fault_pool  a deterministic pool of task examples with planted faults and ground truth
    reference   plain reference implementations the optimised training code is checked against:
                full_logits_loss (the full-logit summed loss), kept_activations (activation memory)
    run_fixture a run directory in the stages' formats, written without a model (the report's tests, benchmark)
    browser     headless Chromium over the DevTools protocol (the report's browser checks)
"""
