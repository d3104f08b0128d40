import os

# Tests never reach the Hugging Face hub: a missing hub id fails at once instead of after the network's retries.
# Set here, before conftest imports transformers, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
