"""Real storage servers on loopback for the tests: XRootD (root:// and its HTTP plugin) and Rucio."""
