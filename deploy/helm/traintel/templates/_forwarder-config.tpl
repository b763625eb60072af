{{/* The first tier's pipeline (the per-node agent or the in-pod sidecar): OTLP in from the
     training processes, span metrics computed here, everything forwarded to the gateway.

     Span metrics are computed in the first tier because every span of one rank passes through
     the same agent or sidecar: a connector there keeps one consistent cumulative series per rank
     and span name, where gateway replicas would each count a share under identical labels.
     Call with (dict "root" $ "listen" "0.0.0.0"). */}}
{{- define "traintel.forwarderConfig" -}}
{{- $c := .root.Values.collector -}}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: {{ .listen }}:4317
      http:
        endpoint: {{ .listen }}:4318
processors:
  # First in every pipeline: refuse data (the SDK retries) rather than run out of memory.
  memory_limiter:
    check_interval: 1s
    limit_percentage: 80
    spike_limit_percentage: 25
  batch:
    timeout: 1s
    send_batch_size: 2048
connectors:
  # As in otel-collector/config.yaml: calls and a duration histogram per run, rank and span name.
  span_metrics:
    namespace: traces.span.metrics
    histogram:
      unit: s
      explicit:
        buckets: [1ms, 5ms, 10ms, 50ms, 100ms, 250ms, 500ms, 1s, 2500ms, 5s, 10s, 30s, 1m, 2m, 5m, 10m]
    dimensions:
      - name: project
      - name: run
      - name: rank
    metrics_flush_interval: 15s
exporters:
  otlp_grpc/gateway:
    endpoint: {{ include "traintel.gatewayEndpoint" .root }}
    tls:
      insecure: true
    sending_queue:
      enabled: true
      queue_size: 5000
    retry_on_failure:
      enabled: true
      max_elapsed_time: 10m
  {{- if not $c.loki.enabled }}
  # Logs are not stored (collector.loki.enabled is false): count them here and drop them, so that
  # the runs' exporters are not answered with errors.
  debug/drop:
    verbosity: basic
    sampling_initial: 1
    sampling_thereafter: 10000
  {{- end }}
extensions:
  health_check:
    endpoint: {{ .listen }}:13133
service:
  extensions: [health_check]
  {{- include "traintel.collectorTelemetry" . | nindent 2 }}
  pipelines:
    metrics:
      receivers: [otlp, span_metrics]
      processors: [memory_limiter, batch]
      exporters: [otlp_grpc/gateway]
    logs:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [{{ if $c.loki.enabled }}otlp_grpc/gateway{{ else }}debug/drop{{ end }}]
    traces:
      receivers: [otlp]
      processors: [memory_limiter, batch]
      exporters: [span_metrics{{ if $c.traces.enabled }}, otlp_grpc/gateway{{ end }}]
{{- end -}}
