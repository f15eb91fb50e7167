"""Neo et al.: N1 object-token ablation, N2 logit lens, N3 attention blocking, and their inputs."""
