"""The node's HTTP face (issue 27): what the first round left open (model inference time in
/metrics, slow clients)."""
