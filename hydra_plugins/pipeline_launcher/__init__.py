"""The project's Hydra launcher plugin (Hydra accepts plugins only from the ``hydra_plugins``
namespace): ``watched.WatchedSlurmLauncher``, the target of ``conf/hydra/launcher/slurm.yaml``."""
