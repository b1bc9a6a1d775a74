{{/* Names and labels shared by every object. */}}
{{- define "cloudhv.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cloudhv.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "cloudhv.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cloudhv.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* /opt/cloudhv/config.json: the shim's snake_case keys, from the chart's camelCase values. */}}
{{- define "cloudhv.runtimeConfig" -}}
{{- $r := .Values.runtime -}}
{{- $c := dict "hypervisor" $r.hypervisor "qemu_accel" $r.qemuAccel "default_vcpus" $r.defaultVcpus "default_memory_mb" $r.defaultMemoryMiB "max_vcpus" $r.maxVcpus "max_memory_mb" $r.maxMemoryMiB "max_containers_per_vm" $r.maxContainersPerVm "enable_annotations" $r.enableAnnotations "log_level" $r.logLevel "log_dir" $r.logDir "log_max_bytes" $r.logMaxBytes "log_files" $r.logFiles "scratch_size" $r.scratchSize "scratch_budget" $r.scratchBudget -}}
{{- with .Values.metrics -}}
{{- if .enabled -}}
{{- $host := ternary (printf "[%s]" .listenAddress) .listenAddress (contains ":" .listenAddress) -}}
{{- $_ := set $c "metrics_address" (printf "%s:%d" $host (int .port)) -}}
{{- end -}}
{{- end -}}
{{- toPrettyJson (merge $c $r.extra) -}}
{{- end -}}

{{/* The installer's flags about containerd, shared by install and uninstall. */}}
{{- define "cloudhv.containerdFlags" -}}
- --host-root
- /host
- --restart
- {{ .Values.containerd.restart }}
- --health-timeout
- {{ .Values.containerd.healthTimeoutSeconds | quote }}
{{- with .Values.containerd.configPath }}
- --containerd-config
- {{ . }}
{{- end }}
{{- with .Values.containerd.configVersion }}
- --config-version
- {{ . | quote }}
{{- end }}
{{- with .Values.containerd.pidFile }}
- --containerd-pidfile
- {{ . }}
{{- end }}
{{- end -}}

{{/* The pods' selector labels for one component (the hooks find the installer's pods by it). */}}
{{- define "cloudhv.componentSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/instance=%s,app.kubernetes.io/component=%s" .root.Chart.Name .root.Release.Name .component -}}
{{- end -}}

{{/* The node-level pod spec both DaemonSets share: privileged, host PID, the host's root. */}}
{{- define "cloudhv.nodePod" -}}
serviceAccountName: {{ include "cloudhv.fullname" . }}
hostPID: true
priorityClassName: {{ .Values.priorityClassName }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: host
    hostPath:
      path: /
      type: Directory
  - name: runtime-config
    configMap:
      name: {{ include "cloudhv.fullname" . }}
{{- end -}}
