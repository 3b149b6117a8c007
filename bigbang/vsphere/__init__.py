"""vCenter plumbing for the vsphere connector and the `bigbang vcenter` commands (pyvmomi).

client: one verified, re-logging session and blocking waits; catalog: names to objects;
machine: a VM's state, its differences from the inventory, and the specs that fix them;
assess: create / reconfigure / drift / fine per server; discover: VMs to inventory YAML.
"""
