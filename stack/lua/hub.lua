-- Orthanc-side hook of the routing hub. Deliberately tiny: the Python worker routes.
--
-- Refuse instances that lack the three UIDs the worker keys everything on (study,
-- series, instance); they could never be tracked or routed. The log line names the
-- missing tag and the sender only: this filter writes no patient data (PHI) to the log.
-- Orthanc 1.10.1 refuses such instances itself before this filter runs, and its own
-- error line names the PatientID despite DeidentifyLogs; no Lua hook or log level can
-- prevent that, so Orthanc's output passes through ops/logredact.py, which removes the
-- value (tests/badinput/test_malformed_dicom.py, tests/security/test_no_phi_in_logs.py).
-- This filter is the guard for other versions.

local REQUIRED = { 'StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID' }

function ReceivedInstanceFilter(dicom, origin, info)
   for _, tag in ipairs(REQUIRED) do
      local value = dicom[tag]
      if value == nil or value == '' then
         local sender = origin['RemoteAet'] or origin['Username'] or '?'
         print('hub.lua: refused an instance without ' .. tag ..
               ' (origin ' .. tostring(origin['RequestOrigin']) ..
               ', sender ' .. tostring(sender) .. ')')
         return false
      end
   end
   return true
end
