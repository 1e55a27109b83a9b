{{/* Names and labels shared by every template. */}}

{{- define "inference-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "inference-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "inference-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "inference-operator.labels" -}}
{{ include "inference-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "inference-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "inference-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when leader election is on: forced, or auto with more than one replica. */}}
{{- define "inference-operator.leaderElection" -}}
{{- $v := toString .Values.leaderElection.enabled -}}
{{- if or (eq $v "true") (and (eq $v "auto") (gt (int .Values.replicaCount) 1)) -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/* The operator's RBAC rules, generated from operator/src/rbac.rs by `make crds`. */}}
{{- define "inference-operator.rbac" -}}
{{- .Files.Get "files/rbac.yaml" | fromYaml | toJson -}}
{{- end -}}
