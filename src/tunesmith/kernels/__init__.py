"""Model-level pieces shared by training, evaluation and selection: unwrapping (DDP, PEFT),
packed attention without an L x L mask, and loss at label positions only."""
