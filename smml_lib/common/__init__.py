"""common: the plumbing every other package uses. Nothing here knows about models, GPUs' speed or labs.

- ``paths``: where the checkout, the git-ignored outputs and the cache are (from any working directory);
- ``device``: which device and dtype ("auto" means ``cuda:0`` if torch sees a GPU, else the CPU), their
  names, bytes per element, and ``synchronize``: the one place these choices are made;
- ``display``: show a table or rich text in a notebook, print it elsewhere (scripts, workers, tests);
- ``plots``: the one plotting helper (course style, captions, PNGs under ``outputs/figures``);
- ``credentials``: whether a Hugging Face token or AWS credentials exist (never their values), and
  ``redact`` for anything that might echo a secret;
- ``object_storage``: folders to and from S3 or an S3-compatible server, with clear errors.

May import: nothing.
"""
