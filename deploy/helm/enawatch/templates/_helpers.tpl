{{/* The chart name, as app.kubernetes.io/name. */}}
{{- define "enawatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The objects' name: the release name when it contains the chart name. */}}
{{- define "enawatch.fullname" -}}
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

{{/* Labels of every object. The kustomize base (deploy/kubernetes) is this chart's
rendering without the three Helm-only lines (helm.sh/chart, managed-by, instance). */}}
{{- define "enawatch.labels" -}}
app.kubernetes.io/name: {{ include "enawatch.name" . }}
app.kubernetes.io/part-of: enawatch
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The agent pods' selector: as in the kustomize base, so that an install from
deploy/kubernetes and one from the chart select the same pods (a selector is immutable). */}}
{{- define "enawatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "enawatch.name" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "enawatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "enawatch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "enawatch.priorityClassName" -}}
{{- if .Values.priorityClassName -}}
{{- .Values.priorityClassName -}}
{{- else if .Values.priorityClass.create -}}
{{- include "enawatch.fullname" . }}-node-critical
{{- end -}}
{{- end -}}

{{- define "enawatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* "true" when the agent opens AF_PACKET sockets (the meter, DNS analysis): NET_RAW. */}}
{{- define "enawatch.netRaw" -}}
{{- if or .Values.linklocalMeter.enabled .Values.dnsAnalysis.enabled }}true{{ end -}}
{{- end -}}

{{/* "true" when the agent reads a configuration file. */}}
{{- define "enawatch.configured" -}}
{{- if or .Values.config.file .Values.remoteWrite.enabled }}true{{ end -}}
{{- end -}}

{{/* Choices that cannot go together: failing the render names them. */}}
{{- define "enawatch.validate" -}}
{{- if and .Values.prometheus.monitor.enabled .Values.prometheus.podMonitor.enabled -}}
{{- fail "prometheus.monitor.enabled and prometheus.podMonitor.enabled are both true: choose one (both would scrape every agent twice)" -}}
{{- end -}}
{{- if and .Values.podAttribution.enabled (not .Values.dnsAnalysis.enabled) -}}
{{- fail "podAttribution.enabled needs dnsAnalysis.enabled: pods are named in the DNS analysis" -}}
{{- end -}}
{{- if and .Values.remoteWrite.enabled (not .Values.remoteWrite.endpoints) -}}
{{- fail "remoteWrite.enabled needs at least one entry in remoteWrite.endpoints" -}}
{{- end -}}
{{- end -}}
