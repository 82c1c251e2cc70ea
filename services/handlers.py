"""The one table of command types to their handlers, one module per bounded context.

Nothing registers itself; a command type without a row here stops the import.
"""

from __future__ import annotations

from splice.events import contracts as c

from . import advanced_handlers as adv
from . import chain_handlers as chains
from . import hosts_handlers as hosts
from . import lbaas_handlers as lb
from . import network_handlers as net
from . import servicetype_handlers as st
from .common_handlers import Decision, Handler, SpliceApplication

__all__ = ["COMMAND_HANDLERS", "Decision", "Handler", "SpliceApplication"]

COMMAND_HANDLERS: dict[type[c.Command], Handler] = {
    c.CreateServiceType: st.create_service_type,
    c.UpdateServiceType: st.update_service_type,
    c.SetDefaultServiceType: st.set_default_service_type,
    c.DeleteServiceType: st.delete_service_type,
    c.RegisterHost: hosts.register_host,
    c.DeclareHostLost: hosts.declare_host_lost,
    c.SetQuota: hosts.set_quota,
    c.CreateNetwork: net.create_network,
    c.DeleteNetwork: net.delete_network,
    c.SetNetworkExternal: net.set_network_external,
    c.CreatePort: net.create_port,
    c.UpdatePort: net.update_port,
    c.DeletePort: net.delete_port,
    c.CreateRouter: net.create_router,
    c.AddRouterInterface: net.add_router_interface,
    c.RemoveRouterInterface: net.remove_router_interface,
    c.SetRouterGateway: net.set_router_gateway,
    c.ClearRouterGateway: net.clear_router_gateway,
    c.DeleteRouter: net.delete_router,
    c.CreateLoadBalancer: lb.create_loadbalancer,
    c.UpdateLoadBalancer: lb.update_loadbalancer,
    c.DeleteLoadBalancer: lb.delete_loadbalancer,
    c.CreateListener: lb.create_listener,
    c.UpdateListener: lb.update_listener,
    c.DeleteListener: lb.delete_listener,
    c.CreatePool: lb.create_pool,
    c.UpdatePool: lb.update_pool,
    c.DeletePool: lb.delete_pool,
    c.CreateMember: lb.create_member,
    c.UpdateMember: lb.update_member,
    c.DeleteMember: lb.delete_member,
    c.ReplaceMembers: lb.replace_members,
    c.SetHealthMonitor: lb.set_healthmonitor,
    c.DeleteHealthMonitor: lb.delete_healthmonitor,
    c.CreateL7Policy: lb.create_l7policy,
    c.DeleteL7Policy: lb.delete_l7policy,
    c.CreateL7Rule: lb.create_l7rule,
    c.DeleteL7Rule: lb.delete_l7rule,
    c.ReportProvisioning: lb.report_provisioning,
    c.ReportOperatingStatus: lb.report_operating_status,
    c.ExpirePending: lb.expire_pending,
    c.CreateFirewall: adv.create_firewall,
    c.UpdateFirewall: adv.update_firewall,
    c.InsertFirewallRule: adv.insert_firewall_rule,
    c.MoveFirewallRule: adv.move_firewall_rule,
    c.RemoveFirewallRule: adv.remove_firewall_rule,
    c.DeleteFirewall: adv.delete_firewall,
    c.CreateNat: adv.create_nat,
    c.AddPortForward: adv.add_port_forward,
    c.RemovePortForward: adv.remove_port_forward,
    c.DeleteNat: adv.delete_nat,
    c.CreateTap: adv.create_tap,
    c.DeleteTap: adv.delete_tap,
    c.CreateServiceChain: chains.create_chain,
    c.UpdateServiceChain: chains.update_chain,
    c.DeleteServiceChain: chains.delete_chain,
}

_missing = set(c.COMMANDS.values()) - set(COMMAND_HANDLERS)
if _missing:
    raise RuntimeError(f"commands without a handler: {sorted(t.__name__ for t in _missing)}")
