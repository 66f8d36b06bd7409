"""moebench: compare Mixture-of-Experts expert-offloading and prefetching strategies.

Nothing heavy is imported here, so `moebench --help` stays instant; torch and transformers are
imported by the modules that need them.
"""

__version__ = "0.1.0"
SCHEMA_VERSION = 1
