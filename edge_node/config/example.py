"""The example config: every key with its default and a comment; ``fleet-edge example-config``
prints it, and a test checks that it validates."""

EXAMPLE_CONFIG = """\
# fleet-edge configuration. Every key can be overridden by an environment variable:
# FLEET_EDGE_ + the dotted key upper-cased, '.' -> '_':
#   central.api_key -> FLEET_EDGE_CENTRAL_API_KEY
node_id = "site-1-gw"
listen = "0.0.0.0:9300"          # where devices POST /api/v1/ingest
data_dir = "/var/lib/fleet-edge"  # the SQLite buffer lives here
log_level = "info"
drain_timeout_s = 10.0            # on SIGTERM: time allowed to finish in-flight work

[central]
url = "https://central.example:9400"
api_key = "CHANGE-ME"             # from: fleet-central nodes add NODE_ID
ca_file = ""                      # the CA of central's certificate (empty: the system's CAs)
client_cert = ""                  # mutual TLS: this node's certificate (PEM) ...
client_key = ""                   # ... and its key
server_name = ""                  # the name in central's certificate, if not the URL's host
timeout_s = 30.0
backoff_initial_s = 0.5
backoff_max_s = 60.0
max_batch_bytes = 8388608         # segments are sized to fit one batch of this size
max_bytes_per_s = 0               # cap for metered links, >= 1024 bytes/s to central; 0: none
live_share = 0.25                 # ... share of the cap kept for live data
live_window_s = 60.0              # segments this fresh go out beside a draining backlog
logs_max_age_s = 604800.0         # not sent when older (Loki's reject_old_samples_max_age;
                                  # whatever central's backend; 0: no limit)
metrics_max_age_s = 0.0           # ... (VictoriaMetrics' retention); 0: no limit
rollups_max_age_s = 0.0           # ... (ClickHouse's CLICKHOUSE_RETENTION_DAYS)
too_old = "drop"                  # drop (counted) | keep (a dead letter, exportable)

[buffer]
max_disk_mb = 1024                # oldest logs, then oldest metrics, are dropped beyond this
synchronous = "full"              # full: a power cut never loses an acknowledged request
commit_window_ms = 2.0            # group commit: requests within this window share one fsync
roll_interval_s = 1.0
segment_max_samples = 2000000
merge_after_s = 5.0
queue_size = 256
disk_reserve_mb = 0               # kept free on the data disk; below it ingest answers 503
                                  # (0: 2% of the filesystem, 1-16 MiB)

[ingest]
max_body_bytes = 16777216
max_decompressed_bytes = 67108864
max_samples_per_request = 200000
max_logs_per_request = 50000
max_labels_per_series = 32
max_label_value_length = 1024
max_label_name_length = 128       # also the metric name's limit
max_log_line_bytes = 65536
tokens_file = ""                  # device/site bearer tokens (JSON); empty: no device auth
max_series_per_device = 20000     # active series per device (seen within series_ttl_s); 0: off
series_ttl_s = 3600.0
# Prometheus text / Influx line protocol: the first of these labels a series carries names its
# device (becomes its `device` label)
device_labels = "device,device_id,host,instance"

[aggregate]
# Stream aggregation rules, in vmagent's YAML format (or TOML with [[rules]]), e.g.
#   - match: 'cpu_usage_percent{site!=""}'
#     interval: 5m
#     by: [site]
#     outputs: [avg, max, "quantiles(0.5, 0.9, 0.99)"]
#     keep_raw: false        # only the rollups leave the site
rules_file = ""
checkpoint_interval_s = 300.0     # state saved at window closes, on shutdown and this often

[alerts]
rule_files = ""                   # Prometheus rule files, comma-separated (fleet-edge check-rules)
hooks_file = ""                   # YAML: route (group_by, repeat_interval) + hooks (exec,
                                  # webhook, alertmanager, log)
builtin_rules = true              # device offline, ingestion drop, storage, forwarding, backlog
builtin_interval_s = 30.0
device_offline_after_s = 300.0    # a known device silent this long is offline
ingest_drop_ratio = 0.2           # ingestion 20% below the previous 10 minutes
storage_used_ratio = 0.8          # buffer budget or data disk 80% used
forward_failure_ratio = 0.01      # more than 1% of sends to central failing
backlog_age_s = 3600.0            # oldest unforwarded data older than this
max_series = 200000               # recent series kept in memory for the rules
snapshot_interval_s = 300.0       # their recent data saved this often (and on shutdown)

[host]
enabled = true                    # this box's CPU, memory, disks, network, temperatures
interval_s = 15.0                 # ... stored and forwarded like a device's metrics
device = ""                       # their `device` label (empty: node_id); role="gateway"

[clock]                           # devices with a wrong clock (1970 after a power cut, drift)
policy = "correct"                # accept (store as sent) | correct (shift by the device's
                                  # offset) | reject (422 naming the device and its offset)
max_ahead_s = 300.0               # a device's newest timestamp further ahead: its clock
earliest_valid = "2020-01-01"     # timestamps before this date: a clock reset to its epoch
window_s = 600.0                  # a flagged device's later replays are corrected too
protocol_policies = ""            # e.g. "remote_write=accept" (overrides policy); protocols:
                                  # native, prometheus_text, remote_write, loki, influx_v1,
                                  # influx_v2, fleetd_agent
device_policies = ""              # e.g. "pump-7=reject" (overrides both)

[tls]                             # HTTPS for devices on `listen` (files re-read on reload)
cert_file = ""                    # PEM certificate (chain); with key_file, listen is HTTPS
key_file = ""
client_ca_file = ""               # the CA that signs device certificates
client_certs = "off"              # off | optional | required: a verified certificate's
                                  # common name is the device (like a device token)
plain_listen = ""                 # e.g. "0.0.0.0:9301": plain HTTP beside it, legacy devices

[status]
step_s = 30.0                     # the status page's charts: one point per step
history_hours = 6.0               # ... this many hours kept (across restarts)

[scrape]
static_targets = ""               # e.g. "10.0.0.5:9100,http://cam-1.local:8080/metrics"
targets_file = ""                 # file_sd JSON, re-read when it changes
interval_s = 15.0
timeout_s = 10.0
job = "scrape"
"""
