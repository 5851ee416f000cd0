"""Hydra configs of the built-in problems: experiment/ recipes and named problem/ mixtures,
on the search path of every t2t command (`hydra.searchpath` in t2t/configs/<command>.yaml)."""
