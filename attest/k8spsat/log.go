package k8spsat

// Keys of the refusal log line.
const (
	logReason         = "reason"
	logDetail         = "detail"
	logNamespace      = "namespace"
	logServiceAccount = "service_account"
	logPod            = "pod"
	logPodUID         = "pod_uid"
	logNode           = "node"
	logTokenNodeUID   = "token_node_uid"
	logLiveUID        = "live_uid"
	logUnverified     = "unverified" // group: the token's claims when the apiserver refused it
)

// Reasons of refusal, the values of logReason.
const (
	reasonMalformed         = "malformed"           // not a pod-bound service-account JWT (or too large)
	reasonAudience          = "audience"            // not for the configured audience
	reasonExpired           = "expired"             // exp passed or nbf not reached
	reasonNotServiceAccount = "not_service_account" // subject or reviewed user is not a service account
	reasonServiceAccount    = "service_account_not_allowed"
	reasonNotPodBound       = "not_pod_bound"
	reasonNotAuthenticated  = "not_authenticated" // the apiserver said no
	reasonPodGone           = "pod_gone"
	reasonPodRecreated      = "pod_recreated"
	reasonPodServiceAccount = "pod_service_account" // the pod runs as another service account
	reasonPodNode           = "pod_node"            // unscheduled, or on another node than the token says
	reasonPodTerminating    = "pod_terminating"
	reasonPodFinished       = "pod_finished"
	reasonNodeGone          = "node_gone"
	reasonNodeRecreated     = "node_recreated"
)
