"""The node side on Kubernetes: the chained CNI plugin, its installer, and the node agent
that captures meshed pods and hands them to ztunnel (docs/node.md)."""
