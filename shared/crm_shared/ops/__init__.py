"""`crm`: the operators' command line (topics, consumer lag, tailing a topic, rebuilds,
re-publishing, CSV imports), talking to running services over HTTP and to Kafka."""
