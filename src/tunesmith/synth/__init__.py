"""Synthetic data by rejection sampling (RAFT): prompts with verifiers -> K samples -> SFT rows and preference pairs.

    prompts.py    SynthPrompt: the conversation to answer and its verifier (ifeval, tasks, code, none)
    generated.py  generated sources: IFEval-style constraint prompts, built-in tasks (apart from eval items)
    userdata.py   the user's files: prompts, conversations, code problems; bad rows as file:line rejects
    sources.py    the --prompts sources collected, limited and deduplicated
    decontam.py   n-gram decontamination of the prompts against the eval suites
    sampling.py   K samples per prompt on the generation engine, stored as they finish
    store.py      the content-hashed sample store that makes a run resumable
    verify.py     verdicts: IFEval checkers, check_answer, unit tests in the sandbox
    raft.py       per prompt: dropped (and why), the best accepted answer, a preference pair
    outputs.py    sft.jsonl, pairs.jsonl, samples.jsonl
    report.py     report.json and the printed tables

The stage that runs them in order is `tunesmith.stages.synth` (`tunesmith synth`).
"""
