"""What factories and batch systems run: the one-file bundle (`python -m launch.build`), the bash wrapper
(`pilot-wrapper.sh`) and a documented HTCondor submit description (`pilot.sub`)."""
