"""metaft's Hydra configs, installed as the package ``metaft.conf`` (``pkg://metaft.conf``).

In a checkout ``src/metaft/conf`` links here; a wheel holds the files themselves."""
