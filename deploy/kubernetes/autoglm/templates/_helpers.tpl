{{/* The chart's name. */}}
{{- define "autoglm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/*
The StatefulSet's name, and the prefix of the other objects. At most 52 characters: the
StatefulSet adds a hash to it in the controller-revision-hash label (63 at most).
*/}}
{{- define "autoglm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The headless Service: the StatefulSet's serviceName, and what the ServiceMonitor scrapes. */}}
{{- define "autoglm.headless" -}}
{{- printf "%s-headless" (include "autoglm.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The mounted Secret: the existing one, the chart's own, or none (empty). */}}
{{- define "autoglm.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else if .Values.secret.data -}}
{{- include "autoglm.fullname" . -}}
{{- end -}}
{{- end -}}

{{/*
Selector labels: these never change after the first install (a StatefulSet's selector and its
volumeClaimTemplates are immutable), so no version goes in them.
*/}}
{{- define "autoglm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "autoglm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "autoglm.labels" -}}
{{ include "autoglm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Where config.yaml and schemas/ are mounted, and where the Secret is. */}}
{{- define "autoglm.configDir" -}}/etc/autoglm/config{{- end -}}
{{- define "autoglm.secretsDir" -}}/etc/autoglm/secrets{{- end -}}

{{/*
The config file: .Values.config with the four keys the chart owns. Setting one of them in
.Values.config fails the render, naming the value to use instead.
*/}}
{{- define "autoglm.config" -}}
{{- $config := deepCopy (.Values.config | default dict) -}}
{{- $owned := dict
      "shutdown_timeout" "shutdownTimeoutSeconds"
      "metrics" "metrics.port and metrics.listenAddress" -}}
{{- range $key, $instead := $owned -}}
{{- if hasKey $config $key -}}
{{- fail (printf "config.%s is set by the chart; set %s instead" $key $instead) -}}
{{- end -}}
{{- end -}}
{{- $kafka := get $config "kafka" | default dict -}}
{{- if hasKey $kafka "instance_id" -}}
{{- fail "config.kafka.instance_id is set by the chart from the pod's ordinal (instanceId.from)" -}}
{{- end -}}
{{- $queue := get $config "event_queue" | default dict -}}
{{- if hasKey $queue "storage_path" -}}
{{- fail "config.event_queue.storage_path is set by the chart (persistence.mountPath)" -}}
{{- end -}}
{{- $_ := set $queue "storage_path" (printf "%s/state" .Values.persistence.mountPath) -}}
{{- $_ := set $config "event_queue" $queue -}}
{{- $_ := set $config "shutdown_timeout" (printf "%ds" (int .Values.shutdownTimeoutSeconds)) -}}
{{- $listen := printf "%s:%d" .Values.metrics.listenAddress (int .Values.metrics.port) -}}
{{- $_ := set $config "metrics" (dict "listen" $listen) -}}
{{- toYaml $config -}}
{{- end -}}
