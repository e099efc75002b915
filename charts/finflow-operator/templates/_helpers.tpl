{{- define "finflow-operator.labels" -}}
app.kubernetes.io/name: finflow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "finflow-operator.selector" -}}
app.kubernetes.io/name: finflow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
