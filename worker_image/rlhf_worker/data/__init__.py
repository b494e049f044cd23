"""A job's data: its prompt file and the actor's tokenizer.

- ``prompts``: reading JSON Lines or Parquet prompts, tokenising them, and which
  prompts each iteration sees (a pure function of the seed and the iteration);
- ``tokenizer``: a model directory's tokenizer, read with the `tokenizers` library.
"""
