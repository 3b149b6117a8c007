"""XenAPI plumbing for the xen connector and the `bigbang xen` commands (Citrix Hypervisor, XCP-ng).

client: the transport (one verified session, pool-master redirects, task polling, logout);
catalog: names to pool objects; machine: a VM's state, its differences from the inventory and
the calls that fix them; assess: create / reconfigure / drift / fine per server; discover: VMs
to inventory YAML.
"""
