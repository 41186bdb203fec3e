{{/* Your own models (values `userModels`, docs/models.md "Serve it on Kubernetes"): model
configs with their weights and model code, mounted read-only at userModels.mountPath from an
existing PersistentVolumeClaim, or copied there at start by an init container from an image
that holds them. The service config's model_configs point into the mount. */}}

{{/* Checks that stop a bad combination at `helm template` / `helm install` time. */}}
{{- define "saliency.userModelsChecks" -}}
{{- $u := .Values.userModels -}}
{{- if $u.enabled -}}
{{- if not $u.configs -}}
{{- fail "userModels.configs: list the model configs to serve, as paths inside the mount (e.g. my_resnet/my_resnet.yaml)" -}}
{{- end -}}
{{- if eq (not $u.existingClaim) (not $u.image.repository) -}}
{{- fail "userModels: set exactly one of existingClaim (a PersistentVolumeClaim holding the files) and image.repository (an image an init container copies them from)" -}}
{{- end -}}
{{- end -}}
{{- if not (or .Values.config.models (and $u.enabled $u.configs)) -}}
{{- fail "config.models is empty and no userModels.configs are given: the service would have no model to serve" -}}
{{- end -}}
{{- end -}}

{{/* Sets model_configs in the service config dict (list: config dict, root context). */}}
{{- define "saliency.setUserModelConfigs" -}}
{{- $config := index . 0 -}}
{{- $u := (index . 1).Values.userModels -}}
{{- if $u.enabled -}}
{{- $paths := splitList "\n" (include "saliency.userModelConfigPaths" (index . 1) | trim) -}}
{{- $_ := set $config "model_configs" $paths -}}
{{- end -}}
{{- end -}}

{{/* The init container that copies the files out of userModels.image (image mode only). */}}
{{- define "saliency.userModelsInitContainers" -}}
{{- include "saliency.userModelsChecks" . -}}
{{- $u := .Values.userModels -}}
{{- if and $u.enabled $u.image.repository }}
initContainers:
  # Copies the model configs, weights and model code out of their image into an emptyDir
  # (the image needs `cp`: any distribution or busybox base). The files must be readable by
  # the pod's user; the copies belong to it.
  - name: user-models
    image: {{ printf "%s:%s" $u.image.repository ($u.image.tag | default "latest") | quote }}
    imagePullPolicy: {{ $u.image.pullPolicy }}
    command: ["cp", "-R", {{ printf "%s/." (trimSuffix "/" $u.image.path) | quote }}, "/user-models/"]
    resources:
      {{- toYaml $u.image.resources | nindent 6 }}
    securityContext:
      {{- include "saliency.containerSecurityContext" . | nindent 6 }}
    volumeMounts:
      - name: user-models
        mountPath: /user-models
{{- end }}
{{- end -}}

{{/* The mount paths of the model configs, one per line. */}}
{{- define "saliency.userModelConfigPaths" -}}
{{- $u := .Values.userModels -}}
{{- range $u.configs }}
{{ printf "%s/%s" (trimSuffix "/" $u.mountPath) (trimPrefix "/" .) }}
{{- end -}}
{{- end -}}

{{/* The saliency container's mount of the files. */}}
{{- define "saliency.userModelsMount" -}}
{{- $u := .Values.userModels -}}
{{- if $u.enabled }}
- name: user-models
  mountPath: {{ $u.mountPath }}
  readOnly: true
  {{- if and $u.existingClaim $u.subPath }}
  subPath: {{ $u.subPath }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The volume: the claim, or the emptyDir the init container fills. */}}
{{- define "saliency.userModelsVolume" -}}
{{- $u := .Values.userModels -}}
{{- if $u.enabled }}
- name: user-models
  {{- if $u.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $u.existingClaim }}
    readOnly: true
  {{- else }}
  emptyDir:
    sizeLimit: {{ $u.image.sizeLimit }}
  {{- end }}
{{- end }}
{{- end -}}
