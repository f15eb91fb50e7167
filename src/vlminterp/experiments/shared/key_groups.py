"""The key groups of a description's attention (K1's table, `description_attention`): BOS apart from
the rest of the system group. Light: the Kaduri specs read it at every Snakemake start."""

KEY_GROUPS: tuple[str, ...] = ("bos", "system", "image", "query", "generated")
