"""Stage-3 finetuning: arguments, model setup (LoRA + projectors), the trainer and its whole-or-nothing saves, what
a rank runs, the supervised launch, run folders, weights-only resume and the memory estimate before a launch."""
