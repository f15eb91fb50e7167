"""Kaduri et al.: K1 attention fractions, K2 group knockouts, K3 localization, K4 re-prompting."""
