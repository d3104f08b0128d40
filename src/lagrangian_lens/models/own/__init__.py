"""The toolkit's own models: the scalar-potential LM (SPLM), the matched GPT baseline and the causal probe."""
