"""The Kubernetes operator: kopf handlers (`handlers`) over pure parts: child
object builders (`builders`), the GPU inventory (`inventory`), status and
conditions (`status`), and the operator's Prometheus metrics (`metrics`)."""
