"""Stages: what a user runs. Each is a typed config (its fields are the recipe keys and the verb's
flags), a run function that reads top to bottom, and a verb in `tunesmith.cli`.

    data       read files and generated tasks, tokenize with verified masks   (tunesmith data check)
    curate     exact + near dedup, decontamination against eval prompts       (tunesmith data dedup|decontaminate)
    select     choose the examples worth training on                          (tunesmith data select)
    prepare    the data half of a recipe: data -> curate -> select -> tokens
    train      tune the model, keep the best checkpoint, save adapter + merged model
    evaluate   the eval suites on a model or a run                            (tunesmith eval)
    generate   complete prompts, chat                                         (tunesmith generate|chat)
    recipe     the recipe: every stage's config composed
    run        the chain                                                      (tunesmith run|train)

Stages orchestrate; the libraries below them (data, curate, select, train, evaluate, export,
report, ...) do the work and never import a stage.
"""
