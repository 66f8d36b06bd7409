"""The machine: `environment` (versions, GPU, driver, PCIe link) and `measure` (a GPU measured into a hardware profile)."""
