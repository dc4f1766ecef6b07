{{- define "labelgate.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "labelgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "labelgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "labelgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "labelgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "labelgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "labelgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "labelgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "labelgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.gpu.enabled -}}{{- $tag = printf "%s%s" $tag .Values.gpu.imageTagSuffix -}}{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The TOML config: values.config plus what the chart itself decides (port, device, mounted CAs). */}}
{{- define "labelgate.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "metrics" (mergeOverwrite (default dict (get $config "metrics")) (dict "listen" (printf "0.0.0.0:%v" .Values.metrics.port))) -}}
{{- if .Values.gpu.enabled -}}
{{- $_ := set $config "runtime" (mergeOverwrite (default dict (get $config "runtime")) (dict "device" "cuda")) -}}
{{- end -}}
{{- /* librdkafka settings are strings to the service: `fetch.wait.max.ms: 100` must not become a TOML integer. */ -}}
{{- $kafka := default dict (get $config "kafka") -}}
{{- $client := dict -}}
{{- range $k, $v := (default dict (get $kafka "client")) -}}
{{- $_ := set $client $k (kindIs "float64" $v | ternary (include "labelgate.tomlValue" $v) (toString $v)) -}}
{{- end -}}
{{- $_ := set $kafka "client" $client -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- if .Values.kafka.tls.existingSecret -}}
{{- $kafka := default dict (get $config "kafka") -}}
{{- $client := default dict (get $kafka "client") -}}
{{- $_ := set $client "ssl.ca.location" (printf "/etc/labelgate/kafka-tls/%s" .Values.kafka.tls.caKey) -}}
{{- if .Values.kafka.tls.certKey -}}
{{- $_ := set $client "ssl.certificate.location" (printf "/etc/labelgate/kafka-tls/%s" .Values.kafka.tls.certKey) -}}
{{- $_ := set $client "ssl.key.location" (printf "/etc/labelgate/kafka-tls/%s" .Values.kafka.tls.keyKey) -}}
{{- end -}}
{{- $_ := set $kafka "client" $client -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- end -}}
{{- if .Values.redis.tls.existingSecret -}}
{{- $state := default dict (get $config "state") -}}
{{- $redis := default dict (get $state "redis") -}}
{{- $_ := set $redis "tls_ca_file" (printf "/etc/labelgate/redis-tls/%s" .Values.redis.tls.caKey) -}}
{{- $_ := set $state "redis" $redis -}}
{{- $_ := set $config "state" $state -}}
{{- end -}}
{{- include "labelgate.tomlTable" (dict "path" "" "table" $config) -}}
{{- end -}}

{{/* TOML by hand: Helm reads every number in values as a float, and toToml would write
     `feature_dim = 784.0`, which the service (rightly) refuses for an integer key. */}}
{{- define "labelgate.tomlValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq (floor .) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "slice" . -}}[{{ range $i, $x := . }}{{ if $i }}, {{ end }}{{ include "labelgate.tomlValue" $x }}{{ end }}]
{{- else if kindIs "map" . -}}{{ fail "labelgate.tomlValue: maps are tables" }}
{{- else -}}{{ . }}
{{- end -}}
{{- end -}}

{{- define "labelgate.tomlTable" -}}
{{- $path := .path -}}
{{- range $k, $v := .table }}
{{- if not (kindIs "map" $v) }}
{{ toJson $k }} = {{ include "labelgate.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $sub := ternary (toJson $k) (printf "%s.%s" $path (toJson $k)) (eq $path "") }}

[{{ $sub }}]
{{- include "labelgate.tomlTable" (dict "path" $sub "table" $v) }}
{{- end }}
{{- end }}
{{- end -}}
