"""The item space a run decodes in: the catalog trie, the prompt, and semantic IDs (items as code tokens), plus
the switch between titles and semantic IDs."""
