-- Orthanc-side hook of the routing hub. Deliberately tiny: the Python worker routes.
--
-- Refuse instances that lack the three UIDs the worker keys everything on (study,
-- series, instance); they could never be tracked or routed. The log line names the
-- missing tag and the sender only: no patient data (PHI) is ever written to the log.

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
