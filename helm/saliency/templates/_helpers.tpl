{{/* Names and labels. */}}
{{- define "saliency.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "saliency.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "saliency.selectorLabels" -}}
app.kubernetes.io/name: {{ include "saliency.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "saliency.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "saliency.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "saliency.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "saliency.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Unless image.tag is set: "<appVersion>-<cpu|cuda>", with "-embedded" (the image without
Java and TorchServe, BACKENDS=embedded in deploy/Dockerfile) for the embedded backend. */}}
{{- define "saliency.image" -}}
{{- $flavor := ternary "cuda" "cpu" .Values.gpu.enabled -}}
{{- $backends := ternary "-embedded" "" (eq .Values.backend "embedded") -}}
{{- $tag := default (printf "%s-%s%s" .Chart.AppVersion $flavor $backends) .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* Secret names: an existing Secret when given, else the chart's own. */}}
{{- define "saliency.authSecretName" -}}
{{- default (include "saliency.fullname" .) .Values.auth.existingSecret -}}
{{- end -}}
{{- define "saliency.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "saliency.fullname" .)) .Values.tls.existingSecret -}}
{{- end -}}

{{/* Paths inside the pod. */}}
{{- define "saliency.configDir" -}}/etc/saliency{{- end -}}
{{- define "saliency.authDir" -}}/etc/saliency-auth{{- end -}}
{{- define "saliency.tlsDir" -}}/etc/saliency-tls{{- end -}}
{{- define "saliency.cacheDir" -}}/var/cache/saliency{{- end -}}
{{- define "saliency.torchserveRunDir" -}}/var/run/torchserve{{- end -}}
{{- define "saliency.modelStore" -}}/opt/saliency/model_store{{- end -}}
{{- define "saliency.torchserveStore" -}}/var/lib/torchserve-store{{- end -}}

{{/* The service config file: .Values.config plus the fields the chart owns (host, ports,
backend, device, auth and TLS file paths, model_configs from userModels). */}}
{{- define "saliency.serviceConfig" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "host" "0.0.0.0" -}}
{{- $_ := set $config "port" (int .Values.service.grpcPort) -}}
{{- $_ := set $config "metrics_host" "0.0.0.0" -}}
{{- $_ := set $config "metrics_port" (int .Values.service.metricsPort) -}}
{{- $_ := set $config "http_enabled" .Values.http.enabled -}}
{{- if .Values.http.enabled -}}
{{- $_ := set $config "http_host" "0.0.0.0" -}}
{{- $_ := set $config "http_port" (int .Values.http.port) -}}
{{- end -}}
{{- $_ := set $config "backend" .Values.backend -}}
{{- $_ := set $config "device" (ternary "cuda" "cpu" (and .Values.gpu.enabled (eq .Values.backend "embedded"))) -}}
{{- $_ := set $config "otlp_endpoint" .Values.tracing.endpoint -}}
{{- if .Values.auth.enabled -}}
{{- $_ := set $config "auth_tokens_file" (printf "%s/tokens" (include "saliency.authDir" .)) -}}
{{- end -}}
{{- if .Values.tls.enabled -}}
{{- $_ := set $config "tls_cert_file" (printf "%s/tls.crt" (include "saliency.tlsDir" .)) -}}
{{- $_ := set $config "tls_key_file" (printf "%s/tls.key" (include "saliency.tlsDir" .)) -}}
{{- if .Values.tls.mutual -}}
{{- $_ := set $config "tls_client_ca_file" (printf "%s/ca.crt" (include "saliency.tlsDir" .)) -}}
{{- end -}}
{{- end -}}
{{- if not $config.limits -}}
{{- $_ := unset $config "limits" -}}
{{- end -}}
{{- include "saliency.setUserModelConfigs" (list $config .) -}}
{{- toYaml $config -}}
{{- end -}}

{{/* TorchServe's config.properties: every port on loopback, hardened (docs/deploy.md). */}}
{{- define "saliency.torchserveProperties" -}}
{{- $ts := .Values.torchserve -}}
{{- $models := dict -}}
{{- range .Values.config.models -}}
{{- $_ := set $models . (dict "1.0" (dict "defaultVersion" true "marName" (printf "%s.mar" .) "minWorkers" (int $ts.fast.workers) "maxWorkers" (int $ts.fast.workers) "batchSize" (int $ts.fast.batchSize) "maxBatchDelay" (int $ts.fast.maxBatchDelayMs))) -}}
{{- $_ := set $models (printf "%s-deep" .) (dict "1.0" (dict "defaultVersion" true "marName" (printf "%s.mar" .) "minWorkers" (int $ts.deep.workers) "maxWorkers" (int $ts.deep.workers) "batchSize" (int $ts.deep.batchSize) "maxBatchDelay" (int $ts.deep.maxBatchDelayMs))) -}}
{{- end -}}
# Rendered by the saliency chart. Everything binds 127.0.0.1: only the saliency container
# in the same pod can reach TorchServe.
inference_address=http://127.0.0.1:8080
management_address=http://127.0.0.1:8081
metrics_address=http://127.0.0.1:8082
grpc_inference_address=127.0.0.1
grpc_inference_port=7070
grpc_management_address=127.0.0.1
grpc_management_port=7071
# Token authorization stays on (keys in key_file.json in the working directory).
disable_token_authorization=false
enable_model_api=false
allowed_urls=file://{{ include "saliency.modelStore" . }}/.*
model_store={{ include "saliency.modelStore" . }}
install_py_dep_per_model=false
{{- $loads := list -}}
{{- range .Values.config.models -}}
{{- $loads = append $loads (printf "%s=%s.mar,%s-deep=%s.mar" . . . .) -}}
{{- end }}
load_models={{ join "," $loads }}
# Request/response limits match the service's max_message_bytes.
max_request_size={{ int (.Values.config.max_message_bytes | default 33554432) }}
max_response_size={{ int (.Values.config.max_message_bytes | default 33554432) }}
metrics_mode=prometheus
# Declares the handler's per-method and batching metrics (model_store/metrics.yaml).
metrics_config={{ include "saliency.modelStore" . }}/metrics.yaml
vmargs=-Xmx{{ $ts.javaHeap }} -XX:+ExitOnOutOfMemoryError -Djava.io.tmpdir=/tmp
models={{ toJson $models }}
{{- end -}}

{{/* TorchServe's log4j2 configuration: every logger to stdout (kubectl logs), none to files
(its default rolls 100 MB files, more than the pod's scratch volume holds). Metrics are
served in Prometheus mode, not logged. */}}
{{- define "saliency.torchserveLog4j2" -}}
<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{ISO8601} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="info" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="MODEL_LOG" level="info" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="MODEL_METRICS" level="warn" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="TS_METRICS" level="warn" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="org.pytorch.serve" level="info" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Root level="info"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
{{- end -}}

{{/* The TorchServe container's readiness: every registration has workers and all are READY,
asked on the management API with the management key from key_file.json (the working
directory). TorchServe's /ping already says Healthy while the workers still load. */}}
{{- define "saliency.torchserveReady" -}}
import json
import urllib.request

key = json.load(open("key_file.json"))["management"]["key"]


def get(path):
    request = urllib.request.Request("http://127.0.0.1:8081" + path, headers={"Authorization": "Bearer " + key})
    return json.load(urllib.request.urlopen(request, timeout=3))


models = [m["modelName"] for m in get("/models?limit=1000")["models"]]
workers = [w for name in models for d in get("/models/" + name) for w in (d["workers"] or [None])]
raise SystemExit(not models or not all(w and w["status"] == "READY" for w in workers))
{{- end -}}

{{/* PID 1 of the TorchServe container. `torchserve` is a Python launcher that starts Java
and waits; as PID 1 it would ignore SIGTERM (no default signal actions for PID 1), and every
shutdown would wait out the grace period. This shell forwards SIGTERM as `torchserve --stop`,
which stops Java (and its workers) and waits for it. */}}
{{- define "saliency.torchserveLauncher" -}}
torchserve "$@" &
launcher=$!
trap 'torchserve --stop --foreground; wait "$launcher"; exit 143' TERM INT
wait "$launcher"
{{- end -}}

{{/* PID 1 of the TorchServe container when it serves user models: first the store
(`saliency.torchserve.store`: the built-in archives copied, an archive of each model
config built, config.properties rendered for them), then TorchServe on it as above. A bad
model config stops the container with the message naming the field. */}}
{{- define "saliency.torchserveUserModelsLauncher" -}}
registrations=$(python -m saliency.torchserve.store "$@") || exit 1
torchserve --start --foreground --ncs --model-store {{ include "saliency.torchserveStore" . }} \
  --ts-config {{ include "saliency.torchserveStore" . }}/config.properties \
  --log-config /etc/torchserve/log4j2.xml --models $registrations &
launcher=$!
trap 'torchserve --stop --foreground; wait "$launcher"; exit 143' TERM INT
wait "$launcher"
{{- end -}}

{{/* Every container: non-root, read-only root filesystem, no capabilities, RuntimeDefault seccomp. */}}
{{- define "saliency.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
